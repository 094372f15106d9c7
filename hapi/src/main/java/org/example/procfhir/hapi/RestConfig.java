package org.example.procfhir.hapi;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.interceptor.api.IInterceptorService;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.dao.DaoRegistry;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.config.JpaConfig;
import ca.uhn.fhir.jpa.packages.IPackageInstallerSvc;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.provider.JpaSystemProvider;
import ca.uhn.fhir.jpa.provider.ValueSetOperationProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import org.springframework.beans.factory.annotation.Qualifier;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;

/** The FHIR REST layer: a HAPI {@link RestfulServer} servlet at {@code /fhir/*}. */
@Configuration
public class RestConfig {

	@Bean
	public InstallPackageProvider installPackageProvider(
			FhirContext theFhirContext,
			IPackageInstallerSvc thePackageInstaller,
			DaoRegistry theDaoRegistry,
			IFhirSystemDao<?, ?> theSystemDao) {
		return new InstallPackageProvider(theFhirContext, thePackageInstaller, theDaoRegistry, theSystemDao);
	}

	@Bean
	public ValidationCacheInvalidator validationCacheInvalidator(
			@Qualifier(JpaConfig.JPA_VALIDATION_SUPPORT_CHAIN) IValidationSupport theValidationSupport,
			IInterceptorService theInterceptorService) {
		ValidationCacheInvalidator invalidator = new ValidationCacheInvalidator(theValidationSupport);
		theInterceptorService.registerInterceptor(invalidator);
		return invalidator;
	}

	@Bean
	public RestfulServer restfulServer(
			FhirContext theFhirContext,
			@Qualifier("myResourceProvidersR4") ResourceProviderFactory theResourceProviders,
			@Qualifier("mySystemProviderR4") JpaSystemProvider<?, ?> theSystemProvider,
			ValueSetOperationProvider theValueSetOperationProvider,
			InstallPackageProvider theInstallPackageProvider,
			IFhirSystemDao<?, ?> theSystemDao,
			JpaStorageSettings theStorageSettings,
			ISearchParamRegistry theSearchParamRegistry,
			@Qualifier(JpaConfig.JPA_VALIDATION_SUPPORT_CHAIN) IValidationSupport theValidationSupport,
			DatabaseBackedPagingProvider thePagingProvider,
			IInterceptorService theInterceptorService) {
		RestfulServer server = new RestfulServer(theFhirContext, theInterceptorService);
		server.setServerName("procfhir HAPI FHIR test server");
		server.setDefaultResponseEncoding(EncodingEnum.JSON);
		server.setDefaultPrettyPrint(false);
		// Clients may ask for up to 1000 results per page (_count); the default page stays 20.
		thePagingProvider.setMaximumPageSize(1000);
		server.setPagingProvider(thePagingProvider);
		server.registerProviders(theResourceProviders.createProviders());
		server.registerProvider(theSystemProvider);
		server.registerProvider(theValueSetOperationProvider);
		server.registerProvider(theInstallPackageProvider);
		server.setServerConformanceProvider(new JpaCapabilityStatementProvider(
				server, theSystemDao, theStorageSettings, theSearchParamRegistry, theValidationSupport));
		return server;
	}

	@Bean
	public ServletRegistrationBean<RestfulServer> fhirServlet(RestfulServer theServer) {
		ServletRegistrationBean<RestfulServer> registration = new ServletRegistrationBean<>(theServer, "/fhir/*");
		registration.setName("fhir");
		registration.setLoadOnStartup(1);
		return registration;
	}
}
